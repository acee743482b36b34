"""cold_start.weights_cache node_cache (issue 24): the weights shared by the replicas of a GPU node on AWS, through
the Mountpoint for Amazon S3 CSI driver (stacks/aws/weights.py, stacks/k8s/weights.py); the serving pods and the
warm-pool placeholders mount one read-only claim, the driver's role reads the artifact's prefix only, and the
manifests pass kubernetes-validate and checkov. GKE's Hyperdisk ML counterpart: test_weights_node_cache_gcp.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from byoc.plan import Plan
from compliance.evaluate import evaluate, graph_from_plan
from compliance.model import Graph, Status
from runtime.model_build.plan import build_plan
from tests.conftest import deploy, run_byoc, spec_data
from tests.stacks.plans import graph
from tests.stacks.test_manifests import KUBERNETES_VERSION, checkov, documents

SHARED = {"cold_start": {"weights_cache": "node_cache", "warm_pool": 1}}
# Pod Security Standards, Restricted: the volume types a pod may use (kubernetes.io/docs/concepts/security/
# pod-security-standards, "Volume Types")
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected"}
RESTRICTED_VOLUMES |= {"secret"}


def kind(plan: Plan, name: str) -> list[Any]:
    return [r for r in plan.resources if r.inputs.get("kind") == name]


def pod_of(plan: Plan, suffix: str) -> dict[str, Any]:
    found = [r for r in kind(plan, "Deployment") if r.name.endswith(suffix)]
    assert len(found) == 1
    spec: dict[str, Any] = found[0].inputs["spec"]["template"]["spec"]
    return spec


def prefix() -> str:
    return build_plan(deploy(**SHARED)).artifact_prefix


def test_serving_pods_and_placeholders_mount_one_read_only_claim_and_verify_through_it() -> None:
    plan = graph(**SHARED)
    [volume] = kind(plan, "PersistentVolume")
    [claim] = kind(plan, "PersistentVolumeClaim")
    spec = volume.inputs["spec"]
    assert spec["accessModes"] == ["ReadOnlyMany"] and claim.inputs["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert spec["csi"]["driver"] == "s3.csi.aws.com" and spec["csi"]["readOnly"] is True
    assert f"prefix {prefix()}/" in spec["mountOptions"] and "read-only" in spec["mountOptions"]
    attributes = spec["csi"]["volumeAttributes"]
    assert attributes["cache"] == "emptyDir" and attributes["authenticationSource"] == "driver"
    assert attributes["cacheEmptyDirSizeLimit"].endswith("Gi")
    assert claim.inputs["spec"]["volumeName"] == volume.inputs["metadata"]["name"] == spec["claimRef"]["name"]
    name = claim.inputs["metadata"]["name"]
    for suffix in ("-serving", "-warm-pool"):
        pod = pod_of(plan, suffix)
        models = next(v for v in pod["volumes"] if v["name"] == "models")
        assert models == {"name": "models", "persistentVolumeClaim": {"claimName": name, "readOnly": True}}
        [init] = pod["initContainers"]
        assert init["command"] == ["byoc", "artifacts", "verify", "/models", "--output", "json"]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in init["volumeMounts"]
        # the pods keep the namespace's restricted Pod Security level
        assert {key for v in pod["volumes"] for key in v if key != "name"} <= RESTRICTED_VOLUMES
    # every GPU node holds the claim while it lives, so its Mountpoint (and cache) outlasts any replica
    [holder] = kind(plan, "DaemonSet")
    pod = holder.inputs["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "models", "persistentVolumeClaim": {"claimName": name, "readOnly": True}}]
    assert pod["securityContext"]["fsGroup"] == pod_of(plan, "-serving")["securityContext"]["fsGroup"]
    assert pod["nodeSelector"] == pod_of(plan, "-serving")["nodeSelector"]
    serve = pod_of(plan, "-serving")["containers"][0]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in serve["volumeMounts"]


def test_the_driver_is_an_addon_whose_role_reads_the_artifact_prefix_only() -> None:
    plan = graph(**SHARED)
    [addon] = [
        a for a in plan.by_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "aws-mountpoint-s3-csi-driver"
    ]
    [association] = addon.inputs["podIdentityAssociations"]
    assert association["serviceAccount"] == "s3-csi-driver-sa"
    assert association["roleArn"].endswith(":role/byoc-test-mountpoint-s3")
    [grant] = [p for p in plan.by_type("aws:iam/rolePolicy:RolePolicy") if p.inputs.get("name") == "byoc-mountpoint_s3"]
    statements = {s["Sid"]: s for s in json.loads(grant.inputs["policy"])["Statement"]}
    assert statements["ReadArtifactPrefix"]["Action"] == ["s3:GetObject"]
    assert statements["ReadArtifactPrefix"]["Resource"].endswith(f"/{prefix()}/*")
    assert statements["ListArtifactPrefix"]["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix()}/*"]}}
    assert statements["ArtifactKeyThroughS3"]["Action"] == ["kms:Decrypt"]
    # the artifact key's own policy lets the role decrypt through S3
    keys = [k for k in plan.by_type("aws:kms/key:Key") if "MountpointReadsThroughS3" in k.inputs["policy"]]
    assert len(keys) == 1 and "artifact" in keys[0].inputs["description"]


def evidence(resources: list[dict[str, Any]]) -> dict[str, Status]:
    document = deploy(**SHARED).plan_document() | {"resources": resources}
    graph_ = graph_from_plan(document)
    assert isinstance(graph_, Graph)
    return {
        f.resource.name: f.status
        for f in evaluate(graph_)
        if f.check.id == "iam_mountpoint_driver_reads_artifact_prefix_only" and f.status != Status.NOT_APPLICABLE
    }


def test_the_evidence_passes_the_plan_and_fails_a_wide_grant() -> None:
    plan = graph(**SHARED)
    assert evidence([r.as_dict() for r in plan.resources]) == {"test-mountpoint_s3": Status.PASS}
    [grant] = [p for p in plan.by_type("aws:iam/rolePolicy:RolePolicy") if p.inputs.get("name") == "byoc-mountpoint_s3"]
    wide = json.loads(grant.inputs["policy"])
    for statement in wide["Statement"]:
        if statement["Sid"] == "ReadArtifactPrefix":  # every model's artifacts, as AWS's example policy grants
            statement["Resource"] = statement["Resource"].split("/artifacts/")[0] + "/artifacts/*"
    resources = [r.as_dict() for r in plan.resources if r is not grant]
    resources.append({**grant.as_dict(), "inputs": {**grant.inputs, "policy": json.dumps(wide)}})
    assert evidence(resources) == {"test-mountpoint_s3": Status.FAIL}
    # the policy as rendered, and a managed policy attached to the same role beside it (the role's permissions are
    # the union): a tester's AmazonS3ReadOnlyAccess passed the check that read the inline policy alone
    [role] = [r for r in plan.by_type("aws:iam/role:Role") if r.name.endswith("mountpoint-s3")]
    attached = {
        "type": "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        "name": "test-mountpoint-s3-read-only",
        "inputs": {"role": role.inputs["name"], "policyArn": "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"},
    }
    assert evidence([r.as_dict() for r in plan.resources] + [attached]) == {"test-mountpoint_s3": Status.FAIL}


def test_without_node_cache_nothing_of_it_is_rendered() -> None:
    plan = graph()
    assert kind(plan, "PersistentVolume") == [] and kind(plan, "PersistentVolumeClaim") == []
    assert kind(plan, "DaemonSet") == []
    assert all(a.inputs["addonName"] != "aws-mountpoint-s3-csi-driver" for a in plan.by_type("aws:eks/addon:Addon"))
    assert all("mountpoint" not in r.name for r in plan.by_type("aws:iam/role:Role"))
    [init] = pod_of(plan, "-serving")["initContainers"]
    assert init["name"] == "fetch-artifacts"


def test_plan_json_says_what_happens_and_the_estimate_has_the_cached_read() -> None:
    document = deploy(**SHARED).plan_document()
    weights = document["cold_start_caches"]["weights"]
    assert weights["shared_by_node"] is True and weights["on"] == "local_nvme"
    assert "the first replica on a node reads the artifact from S3" in weights["detail"]
    cold = document["estimates"]["cold_start"]
    assert cold["options"]["weights_cache"] == "node_cache"
    cached = cold["weights_fetch_cached"]
    fetch = next(p for p in cold["phases"] if p["phase"] == "weights_fetch")
    # the warm node's placeholders read the artifact: the first wake reads it from the node's cache
    assert fetch == cached and "Mountpoint cache" in cached["basis"] and cached["source"].startswith("https://")


def test_every_gpu_node_keeps_room_for_the_driver_and_its_mountpoint() -> None:
    from byoc.catalogs import load_catalog

    extra = load_catalog().kubernetes["gpu_node_daemonsets_node_cache"]["aws"]
    cpu, memory = sum(d["cpu_m"] for d in extra), sum(d["memory_mib"] for d in extra)
    plain, shared = deploy().pods, deploy(**SHARED).pods
    assert shared.daemonsets.cpu_m - plain.daemonsets.cpu_m == cpu
    assert shared.daemonsets.memory_mib - plain.daemonsets.memory_mib == memory
    # p5.4xlarge holds one replica: its slot gives up exactly that room
    assert plain.replicas_per_node == 1
    assert (plain.slot.cpu_m - shared.slot.cpu_m, plain.slot.memory_mib - shared.slot.memory_mib) == (cpu, memory)


def planned(folder: Path, overrides: dict[str, Any]) -> Path:
    """`byoc plan` of a deployment named `shared` with `overrides`, as a user runs it: its output folder."""
    spec = folder / "byoc.yaml"
    spec.write_text(yaml.safe_dump(spec_data(name="shared", **overrides)))
    result = run_byoc("plan", "-f", str(spec), "--out", str(folder / "out"))
    assert result.returncode == 0, result.stderr
    return folder / "out"


@pytest.fixture(scope="module")
def shared_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planned(tmp_path_factory.mktemp("shared"), SHARED)


def test_shared_weights_manifests_are_valid_kubernetes(shared_plan: Path) -> None:
    kinds = set()
    for _, document in documents(shared_plan / "manifests"):
        # (the CRD objects beside them are test_crd_schemas.py's)
        if document["kind"] in ("PersistentVolume", "PersistentVolumeClaim", "Deployment", "DaemonSet"):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            kinds.add(document["kind"])
    assert {"PersistentVolume", "PersistentVolumeClaim", "Deployment", "DaemonSet"} <= kinds


def test_shared_weights_manifests_pass_checkov(shared_plan: Path) -> None:
    failed = checkov(shared_plan / "manifests")["results"]["failed_checks"]
    assert failed == [], [(f["check_id"], f["resource"]) for f in failed]


def test_status_names_the_weights_phase_while_the_pod_reads_through_the_node_cache() -> None:
    """The recorded Karpenter wake (tests/lifecycle/data/wake), its init container as node_cache names it."""
    from byoc.clouds import get_cloud
    from byoc.wake import wake_progress
    from tests.lifecycle.test_wake_status import at, load

    wake = json.loads(json.dumps(load("aws-karpenter-wake.json")).replace('"fetch-artifacts"', '"verify-artifacts"'))
    now, pods, events = at(wake, 160)
    progress = wake_progress(pods, events, get_cloud("aws").node_provisioner, now)
    assert progress is not None and progress.phase == "weights_fetch"
    assert "verify-artifacts to read the artifact through the node's cache" in progress.waiting_for


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_with_node_cache_no_replica_requests_room_for_a_copy_of_its_own(cloud: str) -> None:
    """A replica that reads the node's shared copy must not ask the scheduler for ephemeral storage to hold the
    artifact again: on a node of 8 replicas that would be 8 copies' room, a root disk sized for them, and pods that
    fit no node with a small NVMe. AWS keeps one copy per node (the Mountpoint Pod's cache, which the node's disk
    must hold); GKE keeps it on the Hyperdisk ML volume, outside the node's ephemeral storage."""
    from byoc.sizing import CONTAINER_FILES_GIB, NODE_FILES_GIB, SERVING_SCRATCH_GIB, mountpoint_cache_gib

    overrides: dict[str, Any] = {"cloud": cloud, "cold_start": {"weights_cache": "node_cache"}}
    own, shared = deploy(cloud=cloud).disk, deploy(**overrides).disk
    artifact = shared.artifact_gib
    assert artifact > 8  # llama-3.1-8b in FP8
    assert shared.serving_gib == SERVING_SCRATCH_GIB + CONTAINER_FILES_GIB == own.serving_gib - artifact
    serving = pod_of(graph(**overrides), "-serving")
    engine = next(c for c in serving["containers"] if c["resources"]["requests"].get("nvidia.com/gpu"))
    assert engine["resources"]["requests"]["ephemeral-storage"] == f"{shared.serving_gib}Gi"
    assert engine["resources"]["limits"]["ephemeral-storage"] == f"{shared.serving_gib}Gi"
    # AWS: the Mountpoint Pod's cache, its size limit (the artifact and the cache's overhead); GKE: none
    node_copy = mountpoint_cache_gib(artifact) if cloud == "aws" else 0
    assert shared.node_copy_gib == node_copy
    # the node's disk is sized for its pods' requests and, on AWS, the one copy in the Mountpoint Pod's cache
    pods = (shared.slots - 1) * shared.serving_gib + max(shared.serving_gib, shared.build_gib) + NODE_FILES_GIB
    assert shared.required_gib == pods + node_copy


def test_the_mountpoint_cache_limit_holds_the_artifact_with_its_block_files_and_the_node_disk_counts_it() -> None:
    """The tester's fourth report, its AWS kin: cacheEmptyDirSizeLimit was the artifact's bare size (10 GiB for a
    9.73 GiB artifact). The CSI driver makes it Mountpoint's max-cache-size, Mountpoint writes each 1 MiB block as a
    file with a header (1 MiB + 4 KiB on disk) and the kubelet evicts the Mountpoint Pod whose emptyDir passes the
    limit: the limit must hold the artifact's blocks as files, with room for the blocks being written, and the
    node's disk plan must count that limit (awslabs/mountpoint-s3-csi-driver docs/CACHING.md; mountpoint-s3
    disk_data_cache.rs)."""
    from byoc.coldstart import artifact_bytes

    deployment = deploy(**SHARED)
    [volume] = kind(graph(**SHARED), "PersistentVolume")
    limit = volume.inputs["spec"]["csi"]["volumeAttributes"]["cacheEmptyDirSizeLimit"]
    artifact = artifact_bytes(deployment.model, deployment.shape) / 1024**3  # the planned artifact, ~9.7 GiB
    blocks = math.ceil(artifact * 1024)  # 1 MiB blocks, each a file of 1 MiB + a 4 KiB block for its header
    on_disk = blocks * (1024 + 4) / 1024**2
    assert limit == f"{deployment.disk.node_copy_gib}Gi"
    assert int(limit.removesuffix("Gi")) >= on_disk + 1 > deployment.disk.artifact_gib
    assert deployment.disk.as_dict()["node_copy_gib"] == int(limit.removesuffix("Gi"))
