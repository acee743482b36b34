"""cold_start.weights_cache node_cache on GKE (issue 24): the built artifact copied once per build onto a Hyperdisk ML
volume in each zone of the GPU pool by the GKE Volume Populator (stacks/gcp/weights.py, stacks/k8s/weights.py); the
serving pods and the warm-pool placeholders mount the claim read-only, the populator's principal reads the artifact's
prefix only, the volumes are under the deployment's disk key, and the manifests pass kubernetes-validate and checkov.

The `GCPDataSource` (datalayer.gke.io/v1) and `ComputeClass` (cloud.google.com/v1) objects have no CRD schema to be
had offline (GKE installs them; no npm @kubernetes-models package carries them): their documented fields are
asserted instead (GKE docs, "GCPDataSource" CRD reference; "Automate data transfer from Cloud Storage to a Hyperdisk
ML volume using GKE Volume Populator")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from byoc.catalogs import load_catalog
from byoc.plan import Plan
from compliance.evaluate import evaluate, graph_from_plan
from compliance.model import Graph, Status
from runtime.model_build.plan import build_plan
from tests.conftest import deploy, refused, run_byoc, spec_data
from tests.stacks.plans import graph
from tests.stacks.test_manifests import KUBERNETES_VERSION, checkov, documents
from tests.stacks.test_weights_node_cache import RESTRICTED_VOLUMES, kind, planned, pod_of

SHARED: dict[str, Any] = {"cloud": "gcp", "cold_start": {"weights_cache": "node_cache", "warm_pool": 1}}
KEY_RING = "projects/example-project/locations/europe-west4/keyRings/byoc-test"
COMPUTE_AGENT = "serviceAccount:service-123456789012@compute-system.iam.gserviceaccount.com"
POPULATOR = (
    "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/"
    "example-project.svc.id.goog/subject/ns/byoc-test/sa/byoc-test-weights-populator"
)


def prefix() -> str:
    return build_plan(deploy(**SHARED)).artifact_prefix


def weights_class(plan: Plan) -> Any:
    [found] = [c for c in kind(plan, "StorageClass") if c.inputs["parameters"]["type"] == "hyperdisk-ml"]
    return found


def populator_grant(plan: Plan) -> Any:
    grants = plan.by_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    [found] = [g for g in grants if g.inputs["member"].startswith("principal://")]
    return found


def test_the_hyperdisk_ml_class_is_under_the_disk_key_in_every_zone_of_the_gpu_pool() -> None:
    plan = graph(**SHARED)
    storage = weights_class(plan).inputs
    parameters = storage["parameters"]
    assert storage["provisioner"] == "pd.csi.storage.gke.io"
    assert parameters["disk-encryption-kms-key"] == f"{KEY_RING}/cryptoKeys/disks"
    assert parameters["provisioned-throughput-on-create"] == "2400Mi"
    # one volume per zone of the pool (the populator copies into each), the pool's own zones
    assert parameters["enable-multi-zone-provisioning"] == "true"
    [pool] = [p for p in plan.by_type("gcp:container/nodePool:NodePool") if p.inputs["name"] == "byoc-gpu"]
    [topology] = storage["allowedTopologies"]
    [zones] = topology["matchLabelExpressions"]
    assert zones == {"key": "topology.gke.io/zone", "values": pool.inputs["nodeLocations"]}
    assert storage["volumeBindingMode"] == "Immediate" and storage["allowVolumeExpansion"] is False
    # Compute Engine's service agent may use that key (it encrypts the disks it creates)
    grants = plan.by_type("gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember")
    assert any(g.inputs["member"] == COMPUTE_AGENT and g.inputs["cryptoKeyId"].endswith("/disks") for g in grants)


def test_the_claim_names_a_data_source_on_the_artifact_prefix() -> None:
    plan = graph(**SHARED)
    [source] = [r for r in plan.resources if r.type == "kubernetes:datalayer.gke.io/v1:GCPDataSource"]
    [claim] = kind(plan, "PersistentVolumeClaim")
    assert source.inputs["apiVersion"] == "datalayer.gke.io/v1" and source.inputs["kind"] == "GCPDataSource"
    storage = source.inputs["spec"]["cloudStorage"]
    assert storage == {
        "serviceAccountName": "byoc-test-weights-populator",
        "uri": f"gs://byoc-test-artifacts-123456789012/{prefix()}/",
    }
    assert source.inputs["metadata"]["namespace"] == claim.inputs["metadata"]["namespace"] == "byoc-test"
    spec = claim.inputs["spec"]
    assert spec["accessModes"] == ["ReadOnlyMany"]
    assert spec["storageClassName"] == weights_class(plan).inputs["metadata"]["name"]
    assert spec["dataSourceRef"] == {
        "apiGroup": "datalayer.gke.io",
        "kind": "GCPDataSource",
        "name": source.inputs["metadata"]["name"],
    }
    size = deploy(**SHARED).caches.weights.disk.size_gib  # type: ignore[union-attr]
    assert spec["resources"]["requests"]["storage"] == f"{size}Gi"
    # no static volume, no holder: the volume is whole before any replica starts
    assert kind(plan, "PersistentVolume") == [] and kind(plan, "DaemonSet") == []


def test_serving_pods_and_placeholders_mount_the_claim_read_only_and_verify_through_it() -> None:
    plan = graph(**SHARED)
    [claim] = kind(plan, "PersistentVolumeClaim")
    name = claim.inputs["metadata"]["name"]
    for suffix in ("-serving", "-warm-pool"):
        pod = pod_of(plan, suffix)
        models = next(v for v in pod["volumes"] if v["name"] == "models")
        assert models == {"name": "models", "persistentVolumeClaim": {"claimName": name, "readOnly": True}}
        assert {key for v in pod["volumes"] for key in v if key != "name"} <= RESTRICTED_VOLUMES
    [init] = pod_of(plan, "-serving")["initContainers"]
    assert init["command"] == ["byoc", "artifacts", "verify", "/models", "--output", "json"]
    serve = pod_of(plan, "-serving")["containers"][0]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in serve["volumeMounts"]


def test_the_populator_reads_the_artifact_prefix_only() -> None:
    plan = graph(**SHARED)
    grant = populator_grant(plan).inputs
    assert grant["member"] == POPULATOR and grant["role"] == "roles/storage.objectViewer"
    bucket = "byoc-test-artifacts-123456789012"
    assert grant["condition"]["expression"] == (
        f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{prefix()}/") || '
        f'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("{prefix()}/")'
    )
    [account] = [a for a in kind(plan, "ServiceAccount") if a.inputs["metadata"]["name"].endswith("-populator")]
    assert account.inputs["metadata"]["namespace"] == "byoc-test"


def test_the_transfer_job_has_its_compute_class_and_a_pool_from_zero() -> None:
    plan = graph(**SHARED)
    transfer = load_catalog().kubernetes["gke"]["hyperdisk_ml"]["transfer"]
    [compute_class] = kind(plan, "ComputeClass")
    assert compute_class.inputs["apiVersion"] == "cloud.google.com/v1"
    assert compute_class.inputs["metadata"]["name"] == "gcs-to-hdml-compute-class"
    assert compute_class.inputs["spec"]["priorities"] == [{"machineFamily": transfer["machine_family"]}]
    [pool] = [p for p in plan.by_type("gcp:container/nodePool:NodePool") if p.inputs["name"] == "byoc-weights-transfer"]
    config = pool.inputs["nodeConfig"]
    assert config["labels"]["cloud.google.com/compute-class"] == "gcs-to-hdml-compute-class"
    assert config["taints"] == [
        {"key": "cloud.google.com/compute-class", "value": "gcs-to-hdml-compute-class", "effect": "NO_SCHEDULE"}
    ]
    assert config["machineType"] == transfer["machine_type"]
    assert config["bootDiskKmsKey"] == f"{KEY_RING}/cryptoKeys/disks"
    assert pool.inputs["autoscaling"] == {"minNodeCount": 0, "maxNodeCount": 1} and pool.inputs["initialNodeCount"] == 0


def evidence(resources: list[dict[str, Any]], check_id: str) -> dict[str, Status]:
    document = deploy(**SHARED).plan_document() | {"resources": resources}
    graph_ = graph_from_plan(document)
    assert isinstance(graph_, Graph)
    return {
        f.resource.name: f.status
        for f in evaluate(graph_)
        if f.check.id == check_id and f.status != Status.NOT_APPLICABLE
    }


def replaced(plan: Plan, old: Any, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in plan.resources if r is not old] + [{**old.as_dict(), "inputs": inputs}]


def test_the_populator_evidence_passes_the_plan_and_fails_a_wide_grant() -> None:
    plan = graph(**SHARED)
    check = "gcp_weights_populator_reads_artifact_prefix_only"
    assert evidence([r.as_dict() for r in plan.resources], check) == {"test-weights-populator-read": Status.PASS}
    grant = populator_grant(plan)
    wide = json.loads(json.dumps(grant.inputs).replace(prefix(), "artifacts"))  # every model's artifacts
    assert evidence(replaced(plan, grant, wide), check) == {"test-weights-populator-read": Status.FAIL}
    unconditioned = {k: v for k, v in grant.inputs.items() if k != "condition"}  # the whole bucket
    assert evidence(replaced(plan, grant, unconditioned), check) == {"test-weights-populator-read": Status.FAIL}


def test_the_storage_class_evidence_passes_the_plan_and_fails_without_the_key() -> None:
    plan = graph(**SHARED)
    check = "gcp_gke_storage_class_cmek"
    storage = weights_class(plan)
    name = storage.name.removeprefix("test-")
    assert evidence([r.as_dict() for r in plan.resources], check)[f"test-{name}"] == Status.PASS
    parameters = {k: v for k, v in storage.inputs["parameters"].items() if k != "disk-encryption-kms-key"}
    found = evidence(replaced(plan, storage, {**storage.inputs, "parameters": parameters}), check)
    assert found[f"test-{name}"] == Status.FAIL


def test_without_node_cache_nothing_of_it_is_rendered() -> None:
    plan = graph(cloud="gcp")
    assert kind(plan, "PersistentVolumeClaim") == [] and kind(plan, "ComputeClass") == []
    assert [c.inputs["parameters"]["type"] for c in kind(plan, "StorageClass")] == ["pd-balanced"]
    grants = plan.by_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert all(not g.inputs["member"].startswith("principal://") for g in grants)
    assert all(p.inputs["name"] != "byoc-weights-transfer" for p in plan.by_type("gcp:container/nodePool:NodePool"))
    [init] = pod_of(plan, "-serving")["initContainers"]
    assert init["name"] == "fetch-artifacts"


def test_plan_json_says_what_happens_what_it_costs_and_the_estimate_reads_the_volume() -> None:
    document = deploy(**SHARED).plan_document()
    weights = document["cold_start_caches"]["weights"]
    assert weights["shared_by_node"] is True and weights["on"] == "hyperdisk_ml"
    assert "GKE Volume Populator" in weights["detail"] and "read-only" in weights["detail"]
    hdml = load_catalog().kubernetes["gke"]["hyperdisk_ml"]
    disk = weights["disk"]
    expected = disk["size_gib"] * hdml["usd_per_gib_month"] + 2400 * hdml["usd_per_mib_s_month"]
    assert disk["monthly_usd_per_zone"] == round(expected, 2) and disk["provisioned_throughput_mib_s"] == 2400
    cold = document["estimates"]["cold_start"]
    fetch = next(p for p in cold["phases"] if p["phase"] == "weights_fetch")
    # every wake reads the volume at one VM's published Hyperdisk ML read rate, warm pool or not
    rate = 2400
    gib = float(fetch["basis"].split(" GiB")[0])
    assert fetch["seconds"] == pytest.approx(gib * 1024 / rate, abs=0.1)
    assert "Hyperdisk ML volume" in fetch["basis"] and fetch["source"].startswith("https://cloud.google.com/")
    cold_new = deploy(cloud="gcp", cold_start={"weights_cache": "node_cache"}).plan_document()["estimates"]
    new_fetch = next(p for p in cold_new["cold_start"]["phases"] if p["phase"] == "weights_fetch")
    assert new_fetch == fetch


def test_a_machine_type_that_cannot_attach_hyperdisk_ml_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    hdml = load_catalog().kubernetes["gke"]["hyperdisk_ml"]
    monkeypatch.setitem(hdml, "machine_series", [s for s in hdml["machine_series"] if s != "a3-highgpu"])
    error = refused(**SHARED)
    assert error.field == "cold_start.weights_cache"
    assert "a3-highgpu-1g cannot attach Hyperdisk ML" in error.message and "local_ssd" in error.hint


def test_a_multi_region_deployment_is_refused_with_the_field_and_a_fix(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    data = spec_data(**SHARED, placement={"min_regions": 2}, model="llama-3.1-8b-instruct", shape="l4x1-fp8")
    spec.write_text(yaml.safe_dump(data))
    result = run_byoc("plan", "-f", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "cold_start.weights_cache" in result.stderr and "local_ssd" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def shared_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planned(tmp_path_factory.mktemp("shared-gcp"), SHARED)


def test_shared_weights_manifests_are_valid_kubernetes(shared_plan: Path) -> None:
    kinds = set()
    for _, document in documents(shared_plan / "manifests"):
        if document["kind"] in ("StorageClass", "PersistentVolumeClaim", "ServiceAccount", "Deployment"):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            kinds.add(document["kind"])
        elif document["kind"] in ("GCPDataSource", "ComputeClass"):
            kinds.add(document["kind"])
    assert {"StorageClass", "PersistentVolumeClaim", "GCPDataSource", "ComputeClass"} <= kinds


def test_shared_weights_manifests_pass_checkov(shared_plan: Path) -> None:
    failed = checkov(shared_plan / "manifests")["results"]["failed_checks"]
    assert failed == [], [(f["check_id"], f["resource"]) for f in failed]


@pytest.mark.parametrize(
    ("model", "shape"), [("llama-3.1-8b-instruct", "l4x1-fp8"), ("qwen2.5-72b-instruct", "l4x8-bf16")]
)
def test_the_hyperdisk_ml_claim_leaves_the_artifact_room_after_ext4_takes_its_share(model: str, shape: str) -> None:
    """The tester's fourth report: the claim was sized to the artifact (10 GiB for 9.73 GiB; 156 GiB for
    qwen2.5-72b on l4x8-bf16), but the PD CSI driver formats it ext4 (pkg/gce-pd-csi-driver/node.go,
    defaultLinuxFsType) with mke2fs's defaults (misc/mke2fs.conf.in: 256-byte inodes, one per 16 KiB; 5% reserved
    blocks; a journal of up to 1 GiB), which leave less than the volume's size to write the artifact into."""
    deployment = deploy(**SHARED, model=model, shape=shape, region="europe-west4")
    [claim] = kind(graph(**SHARED, model=model, shape=shape, region="europe-west4"), "PersistentVolumeClaim")
    size = int(claim.inputs["spec"]["resources"]["requests"]["storage"].removesuffix("Gi"))
    assert size == deployment.caches.weights.disk.size_gib  # type: ignore[union-attr]

    def free_gib(volume: int) -> float:  # what ext4 leaves to write, by mke2fs's defaults
        return volume * (1 - 256 / 16384 - 0.05 - 2 / (8 * 4096)) - 1.0

    assert free_gib(size) >= deployment.disk.artifact_gib > free_gib(size - 1)  # enough, and no more than that
    assert size > deployment.disk.artifact_gib
