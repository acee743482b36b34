"""The weights shared by the replicas of a GPU node (spec cold_start.weights_cache node_cache, issue 24).

The model artifact's prefix in the deployment's bucket is one read-only PersistentVolume, mounted at /models by every
serving pod and warm-pool placeholder. On AWS the Mountpoint for Amazon S3 CSI driver v2 (EKS add-on
`aws-mountpoint-s3-csi-driver`; awslabs/mountpoint-s3-csi-driver v2.7.0) serves it: workloads on one node that use
the same PV, the same mount options, the same authentication source and the same fsGroup share one Mountpoint Pod
(docs/MOUNTPOINT_POD_SHARING.md), and that Mountpoint keeps what it reads in its local cache, an emptyDir
(`cache: emptyDir`, docs/CACHING.md) on the node's ephemeral storage, which `instanceStorePolicy: RAID0` puts on the
instance store's NVMe. So the first pod on a node reads the artifact from S3 (Mountpoint's parallel ranged GETs) and
every later one reads it from the node's NVMe: one copy per node, without a hostPath (which the serving namespace's
`restricted` Pod Security level forbids; `persistentVolumeClaim` volumes are allowed at every level, Kubernetes docs
"Pod Security Standards", Restricted, "Volume Types").

On GKE (stacks/gcp/weights.py) the claim is dynamically provisioned instead: a Hyperdisk ML StorageClass (the Compute
Engine PD CSI driver, the deployment's disk key, one zonal volume in each zone of the GPU pool) and a claim whose
`dataSourceRef` names a `GCPDataSource` (datalayer.gke.io/v1) pointing at the artifact's prefix, which the GKE Volume
Populator copies onto the volumes before the claim binds (GKE docs, "Automate data transfer from Cloud Storage to a
Hyperdisk ML volume using GKE Volume Populator"; "GCPDataSource" CRD reference: spec.cloudStorage.uri and
.serviceAccountName). Every GPU node of a zone attaches its zone's volume read-only: one copy per zone, already whole
before the first replica starts, so GKE needs no holder.

Each pod's init container reads every file through the mount and checks its sha256 against manifest.json (`byoc
artifacts verify /models`): the check that `byoc artifacts fetch --verify` makes, and the read that fills the node's
cache. The PV and its claim are named after the artifact's cache key: a PV's source is immutable, and a new build
(a new prefix) rolls the replicas onto a new claim while the old one stays bound until its last pod has gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_kubernetes as k8s

from byoc.names import resource_name

if TYPE_CHECKING:
    from stacks.k8s.serving import ServingStack

MOUNT = "/models"


@dataclass(frozen=True)
class NodeWeightsVolume:
    """How the cloud serves the artifact prefix as a volume cached once per node (stacks/aws/program.py)."""

    driver: str  # the CSI driver's name, e.g. s3.csi.aws.com
    # the PV's spec.csi.volumeAttributes without the cache's size (this module adds it: deployment.disk.node_copy_gib)
    volume_attributes: dict[str, pulumi.Input[str]]
    # the PV's spec.mountOptions without the prefix (this module adds the artifact's)
    mount_options: list[str]
    # the attribute that bounds the node's cache, e.g. cacheEmptyDirSizeLimit (docs/CACHING.md)
    cache_size_attribute: str
    depends_on: list[pulumi.Resource] = field(default_factory=list)


@dataclass(frozen=True)
class PopulatedWeightsVolume:
    """How the cloud serves the artifact prefix as a disk filled from the bucket before any pod reads it, attached
    read-only to every GPU node (GKE: Hyperdisk ML and the GKE Volume Populator, stacks/gcp/weights.py)."""

    provisioner: str  # the StorageClass's CSI provisioner, e.g. pd.csi.storage.gke.io
    # the StorageClass's parameters: disk type, provisioned throughput, the customer key, zones, labels
    parameters: dict[str, pulumi.Input[str]]
    zone_label: str  # the topology key allowedTopologies names, e.g. topology.gke.io/zone
    zones: pulumi.Input[list[str]]  # the GPU node pool's zones: one volume in each
    bucket_root: pulumi.Input[str]  # gs://<bucket>; the data source copies <root>/<artifact prefix>/
    # the data source's custom resource: (apiVersion, kind); its spec is GKE's `cloudStorage` (uri, serviceAccountName)
    data_source: tuple[str, str]
    service_account: str  # the Kubernetes service account the copy runs as (its bucket grant is the cloud's)
    # the transfer Job's nodes: a cluster-scoped ComputeClass of this name (cloud.google.com/v1), whose node pool
    # the cloud creates (stacks/gcp/weights.py)
    transfer_compute_class: str
    transfer_machine_family: str
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def claim_name(stack: ServingStack) -> str:
    return resource_name(stack.deployment.name, f"weights-{stack.plan.cache_key[:10]}")


def render(stack: ServingStack, build: pulumi.Resource | None = None) -> dict[str, Any] | None:
    """The claim of the shared weights (with its PV on AWS, its StorageClass and data source on GKE), and the pod
    volume `models` that reads it; None when the deployment does not share the weights by node (each replica then
    fetches into its own emptyDir). `build`: the model build Job, which a populated disk waits for."""
    caches = stack.deployment.caches
    source = stack.foundation.node_weights
    if caches is None or not caches.weights.shared_by_node or source is None:
        return None
    if isinstance(source, PopulatedWeightsVolume):
        return render_populated(stack, source, build)
    name = claim_name(stack)
    size = f"{stack._artifact_gib}Gi"
    # the node's cache holds the artifact with room for Mountpoint's per-block files and the blocks being written
    # (byoc/sizing.py mountpoint_cache_gib): a limit of the artifact's bare size gets the Mountpoint Pod evicted
    cache = f"{stack.deployment.disk.node_copy_gib}Gi"
    volume = stack._resource(
        k8s.core.v1.PersistentVolume,
        f"weights-pv-{stack.plan.cache_key[:10]}",
        depends_on=source.depends_on,
        metadata={"name": name, "labels": _labels(stack)},
        spec={
            "capacity": {"storage": size},  # required, ignored by the driver (docs/CONFIGURATION.md)
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",  # static provisioning
            "persistentVolumeReclaimPolicy": "Retain",  # the bucket is the stack's, never the claim's
            # only this claim may bind it (Kubernetes docs, "Reserving a PersistentVolume")
            "claimRef": {"namespace": stack.namespace, "name": name},
            "mountOptions": [*source.mount_options, f"prefix {stack.plan.artifact_prefix}/"],
            "csi": {
                "driver": source.driver,
                "volumeHandle": name,  # unique: Kubernetes processes a volume once per handle
                "readOnly": True,
                "volumeAttributes": {**source.volume_attributes, source.cache_size_attribute: cache},
            },
        },
    )
    stack._namespaced(
        k8s.core.v1.PersistentVolumeClaim,
        f"weights-pvc-{stack.plan.cache_key[:10]}",
        {"name": name, "labels": _labels(stack)},
        depends_on=[volume],
        spec={
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "resources": {"requests": {"storage": size}},
            "volumeName": name,
        },
    )
    shared = {"name": "models", "persistentVolumeClaim": {"claimName": name, "readOnly": True}}
    render_holder(stack, shared)
    return shared


def render_populated(
    stack: ServingStack, source: PopulatedWeightsVolume, build: pulumi.Resource | None
) -> dict[str, Any]:
    """GKE: the Hyperdisk ML StorageClass, the transfer Job's ComputeClass, the copy's service account, the
    GCPDataSource and the claim that names it (GKE Volume Populator guide, "Create a Hyperdisk ML volume with
    preloaded data"). The claim waits for the build Job: the populator copies what the prefix holds when the claim is
    created, once."""
    deployment = stack.deployment
    caches = deployment.caches
    assert caches is not None and caches.weights.disk is not None
    disk = caches.weights.disk
    name = claim_name(stack)
    short = stack.plan.cache_key[:10]
    compute_class = stack._resource(
        k8s.apiextensions.CustomResource,
        "weights-transfer-class",
        depends_on=source.depends_on,
        api_version="cloud.google.com/v1",
        kind="ComputeClass",
        # the name GKE's transfer Job selects; the node pool carrying its label and taint is the cloud's
        metadata={"name": source.transfer_compute_class, "labels": _labels(stack)},
        spec={"priorities": [{"machineFamily": source.transfer_machine_family}], "whenUnsatisfiable": "DoNotScaleUp"},
    )
    storage_class = stack._resource(
        k8s.storage.v1.StorageClass,
        f"weights-class-{short}",
        depends_on=source.depends_on,
        metadata={"name": name, "labels": _labels(stack)},
        provisioner=source.provisioner,
        parameters=source.parameters,
        # the artifact never changes under its prefix: the volume is never grown, and it goes with its claim
        allow_volume_expansion=False,
        reclaim_policy="Delete",
        # Immediate: the copy starts when the claim is created (after the build), not when a replica first needs it
        volume_binding_mode="Immediate",
        allowed_topologies=[{"matchLabelExpressions": [{"key": source.zone_label, "values": source.zones}]}],
    )
    account = stack._namespaced(
        k8s.core.v1.ServiceAccount,
        "weights-populator-sa",
        {"name": source.service_account, "labels": _labels(stack)},
        # the transfer Job's identity for Workload Identity Federation: nothing else runs as it
        automount_service_account_token=False,
    )
    api_version, kind = source.data_source
    group = api_version.split("/", 1)[0]
    data_source = stack._custom(
        api_version,
        kind,
        f"weights-source-{short}",
        {"name": name, "labels": _labels(stack)},
        {
            "cloudStorage": {
                "serviceAccountName": source.service_account,
                # a folder: the trailing slash copies what lies under the prefix
                "uri": pulumi.Output.concat(source.bucket_root, "/", stack.plan.artifact_prefix, "/"),
            }
        },
        depends_on=[account, *([build] if build is not None else [])],
    )
    stack._namespaced(
        k8s.core.v1.PersistentVolumeClaim,
        f"weights-pvc-{short}",
        {"name": name, "labels": _labels(stack)},
        depends_on=[data_source, storage_class, compute_class],
        spec={
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": name,
            "resources": {"requests": {"storage": f"{disk.size_gib}Gi"}},
            "dataSourceRef": {"apiGroup": group, "kind": kind, "name": name},
        },
    )
    return {"name": "models", "persistentVolumeClaim": {"claimName": name, "readOnly": True}}


# The holder's requests (byoc/catalogs/kubernetes.yaml gpu_node_daemonsets_node_cache counts them on every GPU node).
HOLDER = {"cpu": "10m", "memory": "16Mi", "ephemeral-storage": "10Mi"}


def render_holder(stack: ServingStack, volume: dict[str, Any]) -> Any:
    """A DaemonSet on the GPU nodes that mounts the claim and does nothing else: it keeps each node's Mountpoint,
    and so its cache, for as long as the node lives. Mountpoint Pod sharing ends a Mountpoint with its last workload
    (docs/MOUNTPOINT_POD_SHARING.md); without a holder, the replica that preempts a warm node's only placeholder, or
    the next replica on a node whose replicas all went, would start an empty cache and read from S3 again. A
    DaemonSet's pods never keep Karpenter or the cluster autoscaler from removing an otherwise empty node."""
    from stacks.k8s.serving import GPU_TOLERATION, container_security, image_annotations, labels, pod_security

    deployment = stack.deployment
    component = "weights-holder"
    match = {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": deployment.name}
    probe = {"exec": {"command": ["true"]}, "periodSeconds": 60}
    return stack._namespaced(
        k8s.apps.v1.DaemonSet,
        "weights-holder",
        {
            "name": resource_name(deployment.name, component),
            "labels": labels(deployment, component),
            "annotations": image_annotations(deployment),
        },
        spec={
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": labels(deployment, component)},
                "spec": {
                    "automountServiceAccountToken": False,
                    # the same fsGroup as the serving pods: a condition of sharing their Mountpoint
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": 0,
                    "nodeSelector": stack.foundation.gpu_node_selector,
                    "tolerations": [GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "hold",
                            "image": deployment.images["runtime"],
                            "imagePullPolicy": "Always",
                            "command": ["sleep", "infinity"],
                            "securityContext": container_security(),
                            "resources": {"requests": dict(HOLDER), "limits": dict(HOLDER)},
                            "readinessProbe": probe,
                            "livenessProbe": probe,
                            "volumeMounts": [{"name": "models", "mountPath": MOUNT, "readOnly": True}],
                        }
                    ],
                    "volumes": [volume],
                },
            },
        },
    )


def verify_command() -> list[str]:
    """Reads every file of the artifact through the mount and checks its sha256 against manifest.json; a mismatch
    fails the init container, so trtllm-serve never loads it."""
    return ["byoc", "artifacts", "verify", MOUNT, "--output", "json"]


def _labels(stack: ServingStack) -> dict[str, str]:
    from stacks.k8s.serving import labels

    return labels(stack.deployment, "weights")
