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
    # the PV's spec.csi.volumeAttributes without the cache's size (this module adds it: the artifact's size)
    volume_attributes: dict[str, pulumi.Input[str]]
    # the PV's spec.mountOptions without the prefix (this module adds the artifact's)
    mount_options: list[str]
    # the attribute that bounds the node's cache, e.g. cacheEmptyDirSizeLimit (docs/CACHING.md)
    cache_size_attribute: str
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def claim_name(stack: ServingStack) -> str:
    return resource_name(stack.deployment.name, f"weights-{stack.plan.cache_key[:10]}")


def render(stack: ServingStack) -> dict[str, Any] | None:
    """The PV and PVC of the shared weights, and the pod volume `models` that reads the claim; None when the
    deployment does not share the weights by node (each replica then fetches into its own emptyDir)."""
    caches = stack.deployment.caches
    source = stack.foundation.node_weights
    if caches is None or not caches.weights.shared_by_node or source is None:
        return None
    name = claim_name(stack)
    size = f"{stack._artifact_gib}Gi"
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
                "volumeAttributes": {**source.volume_attributes, source.cache_size_attribute: size},
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
